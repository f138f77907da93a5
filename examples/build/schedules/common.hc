# Shared by every schedule of the build example: a change here rebuilds every model (make and
# ninja learn that this file matters from the depfile homec writes; the rules only name the
# schedule that includes it).
pipeline tidy { fold_constants; fold_shapes; eliminate_identity; eliminate_dead; cse }
