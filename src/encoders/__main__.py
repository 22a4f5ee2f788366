from encoders.cli import main

main()
