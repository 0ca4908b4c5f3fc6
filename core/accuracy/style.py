"""The QGIS style of the sample points, stored in the GeoPackage as its default style
(``layer_styles`` table), so QGIS shows it however the file is opened: points still to label
as hollow red circles, labelled ones green. Plain XML text: no qgis import in the engine."""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

#: Name of the style in the GeoPackage.
STYLE_NAME = "s2seg labelling"


def _marker(name: str, props: dict[str, str]) -> str:
    body = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (f'<symbol name="{name}" type="marker" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleMarker" enabled="1" locked="0" pass="0">{body}</layer></symbol>')


def labelling_qml(reference_field: str) -> str:
    """Rule-based point style keyed on whether ``reference_field`` is filled."""
    field = reference_field.replace('"', '""')
    empty = quoteattr(f'"{field}" IS NULL OR trim("{field}") = \'\'')
    todo = _marker("0", {"name": "circle", "color": "255,0,0,0", "outline_color": "255,0,0,255",
                         "outline_width": "0.6", "outline_width_unit": "MM", "size": "4", "size_unit": "MM"})
    done = _marker("1", {"name": "circle", "color": "0,170,0,160", "outline_color": "0,80,0,255",
                         "outline_width": "0.3", "outline_width_unit": "MM", "size": "3", "size_unit": "MM"})
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
            '<qgis styleCategories="Symbology" version="3.22">'
            '<renderer-v2 type="RuleRenderer" symbollevels="0" enableorderby="0" forceraster="0">'
            '<rules key="{s2seg-root}">'
            f'<rule filter={empty} symbol="0" label="to label" key="{{s2seg-todo}}"/>'
            '<rule filter="ELSE" symbol="1" label="labelled" key="{s2seg-done}"/>'
            f"</rules><symbols>{todo}{done}</symbols></renderer-v2></qgis>")
