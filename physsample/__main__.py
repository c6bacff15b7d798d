from physsample.cli import main

main()
