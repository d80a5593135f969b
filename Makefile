# Shortcuts; the scripts are the real thing.
.PHONY: check test
check:  ## the contributor's loop, no root needed (CONTRIBUTING.md)
	scripts/check.sh
test:   ## everything, as root: installs, then the whole suite (the CI runs this)
	scripts/test.sh
