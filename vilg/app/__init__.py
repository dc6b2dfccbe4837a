"""The ERNIE-ViLG application built on vilg's kernel library.

Model (`vilg.app.model`), training (`vilg.app.train`), data (`vilg.app.data`), evaluation
(`vilg.app.eval`), generation, the demo, `vilg plan` and the `vilg` command. The kernel library
(`vilg.layouts`, `vilg.ops`, ...) never imports this package.
"""
