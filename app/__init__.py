"""Streamlit dashboard for looking inside TCPA-prompted Vision Transformers.

Start it with ``tcpa-viz app`` or ``streamlit run app/dashboard.py [-- --demo-dir DIR --checkpoint PATH]``.
Modules: :mod:`app.loading` (cached checkpoints, datasets, images and captures), :mod:`app.state`
(selection shared by the views), :mod:`app.figures` (figures specific to the dashboard),
:mod:`app.export` (download buttons), :mod:`app.views` (one module per page) and :mod:`app.launch`
(running the server from Python).
"""
