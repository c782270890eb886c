"""A regression with the one training loop: an MLP, mean squared error and SGD on
scikit-learn's bundled diabetes table, against scikit-learn's LinearRegression.

In the spirit of the Udacity lab's Boston-housing exercise (the Boston table is
no longer shipped by scikit-learn). No download: ``load_diabetes`` is bundled.

    python examples/diabetes.py
"""
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from miniflow import nn
from miniflow.models import from_network
from miniflow.train import TrainConfig, train

x, y = load_diabetes(return_X_y=True)
x = x.astype(np.float32)
y = (y / 100).astype(np.float32)[:, None]  # targets in hundreds: a loss of a few units
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

net = nn.Sequential({"fc1": nn.Linear(10, 8), "relu": nn.ReLU(), "fc2": nn.Linear(8, 1)})
model = from_network(net, (10,), loss="mse", seed=0)
config = TrainConfig(optimizer="sgd", lr=0.02, schedule="constant", epochs=50, weight_decay=0.01,
                     batch_size=16, seed=0)
result = train(config, x_train, y_train, x_test, y_test, model=model, metrics=("rmse",),
               threads=1)
mlp_rmse = 100 * float(np.sqrt(((result.model.predict(x_test) - y_test) ** 2).mean()))

linear = LinearRegression().fit(x_train, y_train)
linear_rmse = 100 * float(np.sqrt(((linear.predict(x_test) - y_test) ** 2).mean()))
print(f"test RMSE: miniflow MLP {mlp_rmse:.1f}, scikit-learn LinearRegression {linear_rmse:.1f}")
