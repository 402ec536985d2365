"""The Gradio app's handlers: plain functions that `app.py` wires to widgets and tests call directly."""
