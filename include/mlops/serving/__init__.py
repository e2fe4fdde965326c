"""The model server (ONNX Runtime behind FastAPI/uvicorn) that every serving profile runs."""
