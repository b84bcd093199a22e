"""The registered student's model code (MLflow "models from code").

``log_student`` passes this file's *path* as ``python_model``: MLflow copies the file into the
logged model and, when the model is loaded or served, runs it to get the model object from
``set_model``. Nothing is pickled, so a registered version loads under any later Python, MLflow or
cloudpickle as long as this code imports. The exported weights travel as the ``student`` artifact.

Kept a separate file (not a ``set_model`` call at the bottom of ``pyfunc_student.py``) so importing
the wrapper elsewhere (evaluation, tests) does not set MLflow's process-global model as a side effect.
"""

import mlflow

from magdi_dist.track.pyfunc_student import StudentModel

mlflow.models.set_model(StudentModel())
