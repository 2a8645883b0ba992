"""metrics stage of vlmsae."""
