"""What every stage shares: atomic file I/O, output locks, progress, several processes,
number formatting for people, the CLI's error handling and every exception class
(:mod:`vlmsae.core.errors`). Nothing here imports another vlmsae room."""
