from zolightning.cli.entry import main

main()
