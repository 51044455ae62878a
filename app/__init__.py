"""Streamlit dashboard for looking inside TCPA-prompted Vision Transformers (installed with tcpa-viz).

Start it with ``tcpa-viz app`` or ``streamlit run app/dashboard.py [-- --demo-dir DIR --checkpoint PATH]``.
Modules: :mod:`app.loading` (cached checkpoints, models, images, captures and dataset numbers, one module
each), :mod:`app.state` (selection shared by the views), :mod:`app.widgets` (controls shared by the views),
:mod:`app.figures` (figures specific to the dashboard), :mod:`app.export` (download buttons),
:mod:`app.views` (the registry of pages, one module per page) and :mod:`app.launch` (running the server).
"""
