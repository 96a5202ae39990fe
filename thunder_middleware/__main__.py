from thunder_middleware.cli import app

app()
