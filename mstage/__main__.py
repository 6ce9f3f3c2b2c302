from mstage.cli.main import run

run()
