from bzi_broadcast.cli import main

raise SystemExit(main())
