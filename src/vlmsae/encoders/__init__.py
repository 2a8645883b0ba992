"""encoders stage of vlmsae."""
