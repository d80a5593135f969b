"""The host: network namespaces (``netns``), NFLOG bindings read from /proc (``procinfo``),
and the one owner of the stop signals (``signals``)."""
