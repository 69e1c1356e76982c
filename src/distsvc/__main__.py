import distsvc.commands.main

raise SystemExit(distsvc.commands.main.main())
