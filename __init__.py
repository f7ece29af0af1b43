"""ComfyUI entry point: node mappings and the web extension folder."""
if __package__:  # ComfyUI imports this folder as a package, under whatever name it was cloned as
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # read as a loose file (pytest sets up the repository folder this way when its name is no identifier)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
