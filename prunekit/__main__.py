from prunekit.cli.main import main

raise SystemExit(main())
