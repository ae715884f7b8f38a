from zolightning.entry import main

main()
