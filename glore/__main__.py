from glore.cli import main

raise SystemExit(main())
