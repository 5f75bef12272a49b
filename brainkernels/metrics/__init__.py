"""Evaluation metrics shared by the methods, built on well-kept libraries (scikit-learn,
scikit-image, scipy, MONAI); one module per kind of result."""
