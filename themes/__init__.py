"""qtui's themes: Theme objects and the TCSS that uses their variables."""
