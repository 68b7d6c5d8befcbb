"""``python -m spin_diffusion.cli`` (what ``accelerate launch -m spin_diffusion.cli`` runs)."""

import sys

from spin_diffusion.cli.main import main

sys.exit(main())
