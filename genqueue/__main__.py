from genqueue.cli.main import main

raise SystemExit(main())
