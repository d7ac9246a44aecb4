"""Draw docs/images/napari.jpg: a real napari window with raw EM, predict.py's probabilities and mask over it,
and the plugin's Segment widget docked.

    xvfb-run -a -s '-screen 0 1600x1000x24' .venv-napari/bin/python tests/napari/make_picture.py \
        RAW.zarr SEG.zarr RUN OUT.jpg

RAW.zarr is the raw volume predict.py segmented into SEG.zarr with the run folder RUN (shown in the widget).
"""

import sys


def main(raw, seg, run, out, z=20):
    import napari

    from lib.napari import layers, widgets

    viewer = napari.Viewer(show=False)
    viewer.window.resize(1400, 900)
    import dask.array as da

    from lib.data import volumes

    viewer.add_image(da.from_zarr(f"{raw}/0"), name="raw EM", scale=volumes.open_volume(raw).voxel_size)
    for data, attributes, kind in layers.output_layers(seg):
        if attributes["name"].endswith("probability"):
            attributes["opacity"] = 0.35
        elif attributes["name"].endswith("mask"):
            attributes["visible"] = False
        viewer.add_layer(napari.layers.Layer.create(data, attributes, kind))
    viewer.layers[-1].contour = 2  # the objects as outlines over the probabilities
    widget = widgets.SegmentWidget(viewer)
    widget.image.setCurrentText("raw EM")
    widget.model.setText(run)
    widget.output.setText(seg)
    widget.progress.setMaximum(1)
    widget.progress.setValue(1)
    widget.status.setText(f"done: {seg}")
    viewer.window.add_dock_widget(widget, name="Segment (EM segmentation)")
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.5
    viewer.dims.set_current_step(0, z)
    from PIL import Image

    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).convert("RGB").save(out, quality=85)
    viewer.close()


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
    main(*sys.argv[1:5])
