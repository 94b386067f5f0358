from masklm.cli import main

raise SystemExit(main())
