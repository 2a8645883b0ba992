"""``vlmsae demo``: every stage on a toy world through the library, checked against the truth.

:func:`~vlmsae.demo.pipeline.run_demo` runs the stages in order (export, cache, embed,
train, analyse, steer, explore) and writes the report; :class:`~vlmsae.demo.config.DemoConfig`
holds its settings.
"""
