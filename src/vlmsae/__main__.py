from vlmsae.cli import main

main()
