from reasonlm.cli import main

main()
