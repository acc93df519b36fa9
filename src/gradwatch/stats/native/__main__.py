"""``python -m gradwatch.stats.native``: build gradwatch's C++ kernels now (see the package)."""

from gradwatch.stats.native import main

raise SystemExit(main())
