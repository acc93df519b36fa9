// Typeset the maths of each page with the KaTeX vendored in docs/assets/katex (no network).
// pymdownx.arithmatex (generic mode) wraps $...$ and $$...$$ in spans with class "arithmatex".
document$.subscribe(function () {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true }
      ],
      throwOnError: false
    });
  });
});
