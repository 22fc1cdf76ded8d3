from perceive.cli import main

main()
