from services.console.server import main

raise SystemExit(main())
