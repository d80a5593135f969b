from ipsec_nflog.cli.main import run

run()
