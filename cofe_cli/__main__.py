from cofe_cli.app import main

main()
