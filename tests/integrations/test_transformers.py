"""The Hugging Face callback records what a plain loop with gw.watch(optimizer=...) records."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import gradwatch as gw

os.environ["HF_HUB_OFFLINE"] = "1"  # the model is built from a config: nothing to download
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (pip install gradwatch[transformers])"
)
pytest.importorskip("accelerate", reason="accelerate not installed (transformers.Trainer needs it)")
from gradwatch.integrations.transformers import GradwatchTrainerCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

BATCH, STEPS, SEQ, VOCAB = 4, 4, 8, 50
COMPARED = ("grad_norm", "backprop_norm", "update_ratio", "weight_norm", "act_std")


def make_model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


class Examples(IterableDataset):
    """A fixed stream of examples: the Trainer does not shuffle an IterableDataset."""

    def __init__(self, n=BATCH * STEPS):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __iter__(self):
        for i in range(len(self.ids)):
            yield {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                   "labels": self.labels[i]}


def train(tmp_path, callback, model, data, max_grad_norm=0.0):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=BATCH, max_steps=STEPS,
        learning_rate=1e-3, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=max_grad_norm, report_to=[], use_cpu=True, seed=0, logging_steps=1,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[callback])
    trainer.train()
    return trainer


def manual(model):
    """The same training as a plain loop watched with gw.watch(optimizer=opt)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = DataLoader(Examples(), batch_size=BATCH,
                        collate_fn=transformers.default_data_collator)
    model.train()
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    return mon.run


def test_callback_records_what_the_manual_loop_records(tmp_path):
    model = make_model()
    reference = manual(copy.deepcopy(model))
    cb = GradwatchTrainerCallback(tmp_path / "run", detail_every=1)
    train(tmp_path, cb, model, Examples())
    run = gw.load(tmp_path / "run")
    assert run.meta["status"] == "closed"
    assert run.meta["settings"]["optimizer"] == ["SGD"]
    assert run.meta["settings"]["gradients"] == "not clipped"
    assert run.steps == list(range(STEPS))
    assert len(run.layers) > 10
    for stat in COMPARED:
        a, b = run.pivot(stat), reference.pivot(stat)
        assert list(a.columns) == list(b.columns) and len(a.columns) > 0, stat
        assert list(a.index) == list(b.index) == list(range(STEPS)), stat
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, err_msg=stat)
    # the loss comes from the Trainer's logs (logging_steps=1: one per step)
    assert run.loss().index.tolist() == list(range(STEPS))
    np.testing.assert_allclose(run.loss().to_numpy(), reference.loss().to_numpy(), rtol=1e-4)
    # the hooks are gone: the model is as it was
    assert not model._forward_pre_hooks and not model.bert.encoder.layer[0]._forward_hooks


def test_with_clipping_the_recorded_gradients_are_clipped(tmp_path):
    cb = GradwatchTrainerCallback(None, stats=["grad_norm"])
    train(tmp_path, cb, make_model(), Examples(), max_grad_norm=1e-3)
    run = cb.run
    assert run.meta["settings"]["gradients"] == "after clipping"
    per_step = np.sqrt((run.pivot("grad_norm") ** 2).sum(axis=1))  # global norm of each step
    np.testing.assert_allclose(per_step.to_numpy(), 1e-3, rtol=1e-3)


def test_exception_during_training_leaves_a_loadable_failed_run(tmp_path):
    model = make_model()
    calls = []

    def fail_on_third_forward(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    model.register_forward_pre_hook(fail_on_third_forward, with_kwargs=True)
    cb = GradwatchTrainerCallback(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), cb:
        train(tmp_path, cb, model, Examples())
    run = gw.load(tmp_path / "run")
    assert run.meta["status"] == "failed"
    assert run.steps == [0, 1]
    assert run.pivot("grad_norm").notna().all().all()


def test_optimizer_is_taken_from_the_trainer():
    with pytest.raises(gw.GradwatchValueError, match="scaler"):
        GradwatchTrainerCallback(scaler=object())


def test_without_transformers_the_import_error_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # None in sys.modules: import fails
    monkeypatch.delitem(sys.modules, "gradwatch.integrations.transformers")
    with pytest.raises(ImportError, match=r"pip install \"gradwatch\[transformers\]\""):
        importlib.import_module("gradwatch.integrations.transformers")
