from zolightning.cli import main

main()
