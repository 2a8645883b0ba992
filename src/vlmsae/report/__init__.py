"""report stage of vlmsae."""
