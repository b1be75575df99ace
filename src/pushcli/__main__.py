from pushcli.cli import main

main()
