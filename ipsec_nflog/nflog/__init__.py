"""The NFLOG record format, pure Python: ``Packet`` and its parser (``packet``), one-line
summaries (``summary``). Never imports the compiled core."""
