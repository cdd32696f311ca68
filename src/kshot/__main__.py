from kshot.cli.app import main

main()
