"""steer stage of vlmsae."""
