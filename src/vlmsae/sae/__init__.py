"""sae stage of vlmsae."""
