"""Request classifier: header screening, keyword rules and a TF-IDF linear model.

This package never imports ``triage``: the service depends on it, not the reverse.
"""
