"""Flask extension objects, created here and bound to the app in the factory."""

from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
