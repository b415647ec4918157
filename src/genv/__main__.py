from genv.cli.main import main

raise SystemExit(main())
