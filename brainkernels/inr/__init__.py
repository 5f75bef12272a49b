"""INR auto-decoder for neonatal brain development (Bieder et al., PRIME 2024; thesis ch. 8):
one coordinate MLP ``f(x, t, l)`` shared by all subjects, one latent vector per training
subject (SSL) or scan, and a global latent (SGLA); fitting a latent to a new scan predicts that
brain at any age."""
