"""KFI's research projects: experiments apart from the library, not installed with the pack (see README.md here)."""
