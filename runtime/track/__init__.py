"""Multi-object tracking in the runtime (torch-free): ByteTrack plus line and zone counting.

    from runtime.track import ByteTracker, LineCounter
    tracker = ByteTracker()
    tracked = tracker.update(detector(frame))      # Detections with track_ids
"""
from runtime.track.bytetrack import ByteTracker, TrackerConfig, linear_assignment, tracker_config
from runtime.track.zones import LineCounter, PolygonZone, Trails, anchors, draw_line, draw_tracks, draw_zone

__all__ = ["ByteTracker", "TrackerConfig", "LineCounter", "PolygonZone", "Trails", "anchors", "draw_tracks", "draw_line",
           "draw_zone", "linear_assignment", "tracker_config"]
