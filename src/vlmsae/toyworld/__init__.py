"""toyworld stage of vlmsae."""
